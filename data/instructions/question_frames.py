"""Question frames per intent, in the styles clinicians write in, and the lexicon names that fill them.

A frame is a template of the grammar of ``paraphrase.expand`` (``{a|b}`` alternatives) with slots:

    <x> <xs> <a x>   the structure or finding asked about: a lexicon name, its plural, with a fitting determiner
    <y> <a y>        a second finding (either-or questions)
    <o> <the o>      an organ name before "volume" ("renal volume"), or as a noun phrase ("the liver", "both kidneys")
    <s>              what a normality question is about ("heart size", "the kidneys", "this film")
    <left> <right>   the two sides of a paired organ ("lt kidney", "right renal"); <pair> <pairs> its noun
    <p1> <p2>        contrast phases (either-or); <study> <this study> the study ("CXR", "this CT"); <expert> an expert

Styles: ``question`` (a full question), ``terse`` (an imperative), ``fragment`` (no verb: "liver vol?") and
``shorthand`` (clinical shorthand: r/o, ?, eval for, s/p). Case, punctuation, typos, lead-ins and fillers come on
top (``data.instructions.question_noise``). Frames are written from clinical usage, never from an evaluation set.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from data.errors import M3Error
from data.lexicon import TERMS

__all__ = ["ClinicianQuestionError", "FRAMES", "STYLES", "SCOPES", "EXPERT_NAMES", "STUDY_NAMES", "PHASE_NAMES", "SIDE_ORGAN",
           "noun_names", "modifier_names", "normal_subjects", "pick_name", "display", "plural", "with_determiner"]



class ClinicianQuestionError(M3Error, ValueError):
    """Clinician-style questions cannot be generated as configured (a setting out of range, a missing decontamination
    list, frames that never read at their scope)."""


STYLES = ("question", "terse", "fragment", "shorthand")

# Intents whose answer depends on whether the agent reads the question as about the slice on screen
# (``data.slice_facts.asks_about_shown_slice``): frames of "study" scope must not read so, "slice" ones must.
SCOPES = {"presence": "study", "presence_slice": "slice", "size": "study", "size_slice": "slice", "side": "study",
          "side_slice": "slice"}

_F = dict[str, tuple[str, ...]]

FRAMES: dict[str, _F] = {
    "presence": {
        "question": ("Is there <a x>{| in <this study>| on <this study>}?", "Are there {any |}<xs>{| in <this study>}?",
                     "Does the patient have <a x>?", "Do you see <a x>{| anywhere| in <this study>}?",
                     "{Is there any|Any} evidence of <x>{| in <this study>| on <this study>}?", "Is there any sign of <x>{| on <this study>}?",
                     "Can you find <a x>{| in <this study>}?", "Does <this study> show <a x>?", "Is <a x> present{| in <this study>}?",
                     "Was <a x> {detected|found|picked up}?", "Are there signs of <x>?", "Is <x> seen{| on <this study>}?",
                     "Do we have <a x>{| on <this study>}?", "Has the patient got <a x>?", "Is there anything to suggest <x>?",
                     "Would you say there is <a x>?", "Does <this study> demonstrate <a x>?", "Is <x> identified?"),
        "terse": ("Check for <xs>{| on <this study>}.", "Look for <x>{| please}.", "Tell me if there is <a x>.",
                  "Screen <this study> for <xs>.", "Check <this study> for <x>.", "Find any <xs>.", "Assess for <x>.",
                  "Report whether <a x> is present.", "Search for <xs>{| in <this study>}.", "Say if you see <a x>.",
                  "Look for evidence of <x>."),
        "fragment": ("<x>?", "<x> present?", "any <x>?", "<x> yes or no?", "<x> y/n?", "<xs>?", "<x> seen?", "<x> on <study>?",
                     "<x> present or absent?", "any <xs> at all?", "evidence of <x>?", "signs of <x>?", "<x> anywhere?"),
        "shorthand": ("r/o <x>", "?<x>", "eval for <x>", "eval <x>", "assess ?<x>", "<x> - y/n", "query <x>", "c/w <x>?",
                      "pls r/o <x>", "{pt|patient} w/ {symptoms|sx}, r/o <x>", "h/o {cancer|malignancy}, any <xs>?",
                      "s/p {surgery|procedure|trauma}, ?<x>", "<x> ?present", "? <x>", "any e/o <x>?", "f/u <x>: present?"),
    },
    "presence_slice": {
        "question": ("Is there <a x> {in|on} this slice?", "Is <a x> {visible|seen|shown} {in|on} this slice?",
                     "Do you see <a x> {here|in this slice|on this slice}?", "Can you see <a x> {here|on this slice|in this image}?",
                     "Are there {any |}<xs> {in|on} this slice?", "Is the <x> {visible|seen} here?", "Can you make out <a x> on this slice?",
                     "Do we see <a x> in this image?", "Is <a x> {depicted|captured} in this slice?", "Are any <xs> shown here?",
                     "Is there <a x> {visible |}on the slice shown here?"),
    },
    "count": {
        "question": ("How many <xs> {are there|does the patient have|can you find|do you count|are seen}{| in <this study>}?",
                     "What is the number of <xs>{| in <this study>}?", "How many <xs> {in total|altogether}?",
                     "Can you count the <xs>{| for me}?", "What's the <x> count?", "Are there multiple <xs>{| or just one}?",
                     "Is there more than one <x>?", "How many separate <xs> {are there|did you find}?", "How many <xs> do you see?",
                     "Is the <x> solitary or are there several?", "How many <xs> are present?"),
        "terse": ("Count the <xs>{| in <this study>}.", "Give me the number of <xs>.", "Count all <xs>{| please}.",
                  "Tell me how many <xs> there are.", "Report the number of <xs>.", "Enumerate the <xs>."),
        "fragment": ("number of <xs>?", "# of <xs>?", "<x> count?", "how many <xs>", "<xs>: how many?", "count of <xs>",
                     "no. of <xs>?", "total <xs>?", "how many <xs> in total"),
        "shorthand": ("# <xs>?", "<xs> - count", "qty <xs>?", "multiple <xs>?", "solitary or multiple <xs>?",
                      "single vs multiple <xs>?", "<x> count pls", "# <xs> pls"),
    },
    "size": {
        "question": ("How big is the {largest |biggest |}<x>?", "What size is the {largest |}<x>?",
                     "How large is the <x>{| on <this study>}?", "What is the {maximum|largest|greatest} diameter of the <x>?",
                     "What's the size of the {largest |}<x>?", "How large is the biggest <x>{| in mm}?", "Is the <x> small or large?",
                     "Is the <x> {big|large}?", "What does the {largest |}<x> measure?", "Is the <x> over {1|2|3} cm?",
                     "How big are the <xs>?", "Is the <x> {large|small} or {large|small}?"),
        "terse": ("Measure the {largest |}<x>.", "Give me the size of the <x>.", "Size the <x>{| please}.",
                  "Report the {maximal|largest} diameter of the <x>.", "Tell me how big the <x> is.", "Measure the <x> diameter."),
        "fragment": ("<x> size?", "size of <x>?", "<x> diameter?", "largest <x> diameter", "<x> dimensions?", "<x> in mm?",
                     "size of the largest <x>?", "<x> how big?", "biggest <x> size?"),
        "shorthand": ("<x> max diam?", "<x> sz?", "<x> dims pls", "<x> - size/diam", "greatest dimension <x>?", "LD of <x>?",
                      "<x> max dimension?", "<x> size in mm pls"),
    },
    "size_slice": {
        "question": ("Is the <x> small, medium or large?", "Is the <x> {in this slice|here|on this slice} small, medium or large?",
                     "Would you call the <x> small, medium or large?", "<x>: small, medium or large?",
                     "Is the <x> {in|on} this slice {big|large|small}?", "Is the <x> shown here large?",
                     "Is the <x> we see here {big|small|large}?", "Small, medium or large: the <x> {here|in this slice}?"),
    },
    "side": {
        "question": ("Which side is the <x> on?", "On which side {is|are} the <xs>?", "Which side {has|contains} the <x>?",
                     "Is the <x> left-sided or right-sided?", "Is the <x> left or right?", "Where is the <x>, left or right?",
                     "What side is the <x>{| located} on?", "Is the <x> {unilateral or bilateral|bilateral}?",
                     "Is the <x> in the left or the right <side organ>?", "Which <side organ> has the <x>?",
                     "Is the <x> on the patient's left or right?", "Which side of the body is the <x> on?"),
        "terse": ("Tell me which side the <x> is on.", "Give the side of the <x>.", "{Lateralize|Lateralise} the <x>.",
                  "Say whether the <x> is left or right.", "State the laterality of the <x>.", "Name the side of the <x>."),
        "fragment": ("<x> side?", "side of <x>?", "<x> laterality?", "<x>: L or R?", "<x> left/right?", "<x> lt or rt?",
                     "which side <x>", "laterality of the <x>", "<x> - which side?", "left or right <x>?"),
        "shorthand": ("<x> - L/R?", "lat of <x>?", "<x> R vs L?", "<x>, which side?", "bilat <xs>?", "<x> ?L ?R", "<x> L/R pls",
                      "<x> laterality pls"),
    },
    "side_slice": {
        "question": ("Is the <x> on the left or {the |}right{| side}?", "Is the <x> {in|on} this slice on the left or {the |}right?",
                     "Is the <x> {shown |}here on the left or right?", "<x> in this slice: on the left or right?",
                     "Does the <x> {lie|sit} on the left or {the |}right{| side}?", "Is the <x> we see here on the left or right?",
                     "Is the <x> in this image on the left or right side?", "Is this <x> on the left or the right?"),
    },
    "volume": {
        "question": ("What is the <o> volume{| in mL| in ml| in cc}?", "What is the volume of <the o>?", "How big is <the o>{| in mL}?",
                     "How large is <the o>{| by volume}?", "Can you measure the <o> volume?", "What's the total <o> volume?",
                     "How many mL is <the o>?", "What volume does <the o> have?", "Could you give me the <o> volume?",
                     "How much does <the o> measure in volume?"),
        "terse": ("Measure <the o>{| volume}.", "Give me the <o> volume.", "Calculate the volume of <the o>.",
                  "Segment <the o> and give its volume.", "Get the <o> volume{| please}.", "Report the <o> volume.",
                  "Volumetry of <the o>{| please}.", "Quantify <the o> volume."),
        "fragment": ("<o> volume?", "<o> vol?", "<o> vol", "vol of <the o>?", "<o> volume in ml", "volume, <the o>?",
                     "<o> size in mL?", "<o> volume please", "volume of <the o>"),
        "shorthand": ("<o> volumetry pls", "<o> vol (mL)?", "<o> vol, cc?", "vol <o>?", "<o> vol ?", "quantify <o> vol",
                      "<o> vol pls", "<o> cc?"),
    },
    "tumor_volume": {
        "question": ("What is the <x> volume?", "What is the {total |}volume of the <x>?", "How big is the <x> in mL?",
                     "What is the {total |combined |}<x> volume{| in mL}?", "How much <x> is there{| by volume}?",
                     "Can you quantify the <x> volume?", "What's the volume of the <xs>?", "How many mL of <x> are there?"),
        "terse": ("Measure the <x> volume.", "Give me the <x> volume{| in mL}.", "Quantify the <x>.",
                  "Calculate the total <x> volume.", "Segment the <x> and report its volume.", "Report the <x> volume."),
        "fragment": ("<x> volume?", "<x> vol?", "vol of <x>?", "total <x> volume", "<x> volume in cc?", "<x> volume in mL",
                     "volume of the <x>?"),
        "shorthand": ("<x> vol (mL)?", "<x> volumetrics?", "<x> burden?", "vol <x>?", "<x> vol pls", "<x> cc?"),
    },
    "phase": {
        "question": ("What {contrast |}phase is this{| scan| study}?", "Which phase of contrast is this?",
                     "In which phase was <this study> acquired?", "What is the contrast phase{| of <this study>}?",
                     "Is this <a p1> phase {scan|study|CT}?", "What's the enhancement phase?", "What timing is this contrast study?",
                     "At what phase was <this study> taken?", "Which contrast phase are we in?", "Is <this study> in the <p1> phase?"),
        "terse": ("Tell me the contrast phase.", "Determine the phase{| of contrast}.", "Identify the contrast phase.",
                  "Name the phase{| of <this study>}.", "Give me the contrast timing."),
        "fragment": ("phase?", "contrast phase?", "which phase?", "phase of contrast?", "<p1> phase?", "contrast timing?",
                     "what phase", "enhancement phase?", "scan phase?"),
        "shorthand": ("phase (art/PV/NC)?", "<p1>?", "phase pls", "timing of contrast?", "<p1> or not?"),
    },
    "contrast": {
        "question": ("Was {IV |intravenous |}contrast {given|used|administered}?", "Is this a contrast-enhanced {scan|CT|study}?",
                     "Is this {scan |}with or without contrast?", "Was <this study> done with contrast?", "Did the patient get contrast?",
                     "Is this a non-contrast CT?", "Has contrast been given{| for <this study>}?", "Is <this study> enhanced?"),
        "terse": ("Tell me if contrast was given.", "Check whether contrast was used.", "Say if <this study> is contrast-enhanced."),
        "fragment": ("contrast?", "IV contrast?", "with contrast?", "enhanced?", "pre or post contrast?", "contrast given?",
                     "w/ contrast?", "contrast or not?"),
        "shorthand": ("w/ or w/o?", "C+?", "C+ or C-?", "CECT?", "NCCT?", "w/wo contrast?", "IV con?"),
    },
    "comparison": {
        "question": ("Which <pair> is {larger|bigger}?", "Which <pair> is smaller?", "Is the <left> {larger|bigger} than the <right>?",
                     "Is the <right> smaller than the <left>?", "Which is {larger|bigger}, the <left> or the <right>?",
                     "Are the <pairs> {the same size|symmetric|symmetrical}?", "How do the two <pairs> compare in {size|volume}?",
                     "Is there any asymmetry between the <pairs>?", "Which <pair> has the {larger|smaller} volume?",
                     "Is the <left> smaller than the <right>?", "Is the <right> {larger|bigger} than the <left>?"),
        "terse": ("Compare the <left> and <right> volumes.", "Compare both <pairs>{| by volume}.", "Tell me which <pair> is bigger.",
                  "Give me left vs right <pair> volumes.", "Compare the <pairs>."),
        "fragment": ("<left> vs <right>?", "larger <pair>?", "bigger <pair>, L or R?", "<pair> asymmetry?", "L vs R <pair> volume?",
                     "smaller <pair>?", "<pair> symmetry?", "<left> or <right> bigger?"),
        "shorthand": ("lt vs rt <pair> vol?", "<pair> vol L/R?", "L/R <pair> asymmetry?", "<pair> sizes L vs R pls"),
    },
    "normal": {
        "question": ("Is the <s> normal?", "Is the <s> {within normal limits|unremarkable}?", "Does the <s> look normal?",
                     "Is the <s> okay?", "Would you call the <s> normal?", "Is the <s> normal or not?", "Does the <s> appear normal?",
                     "Is everything normal with the <s>?"),
        "terse": ("Tell me if the <s> is normal.", "Confirm the <s> is normal.", "Check that the <s> is normal."),
        "fragment": ("<s> normal?", "<s> nl?", "<s> WNL?", "normal <s>?", "<s> ok?", "<s> unremarkable?", "<s> normal or not?"),
        "shorthand": ("<s> wnl?", "nl <s>?", "<s> - nl vs abnl?", "?normal <s>", "<s> nl pls"),
    },
    "normal_study": {
        "question": ("Is this a normal <study>?", "Is <this study> normal?", "Is <this study> {unremarkable|within normal limits}?",
                     "Is everything normal on <this study>?", "Does <this study> look normal?", "Would you call <this study> normal?"),
        "terse": ("Tell me if <this study> is normal.", "Confirm <this study> is normal."),
        "fragment": ("normal?", "normal <study>?", "<study> normal?", "all normal?", "anything wrong?", "<study> ok?"),
        "shorthand": ("nl <study>?", "<study> wnl?", "nl study?", "<study> nl vs abnl?"),
    },
    "abnormal": {
        "question": ("Is the <s> abnormal?", "Is there anything abnormal {in|about} the <s>?", "Any abnormality {in|of} the <s>?",
                     "Is something wrong with the <s>?", "Does the <s> look abnormal?"),
        "terse": ("Tell me if the <s> is abnormal.", "Check the <s> for abnormalities."),
        "fragment": ("<s> abnormal?", "abnormal <s>?", "<s> abnl?", "pathology in the <s>?", "anything in the <s>?"),
        "shorthand": ("abnl <s>?", "<s> ?abnl", "<s> - any path?"),
    },
    "abnormal_study": {
        "question": ("Is <this study> abnormal?", "What is abnormal {on|in} <this study>?",
                     "Are there any findings{| on <this study>}?", "Is there anything abnormal on <this study>?", "What did you find?",
                     "What's wrong on <this study>?", "Any positive findings?"),
        "terse": ("List the findings.", "Tell me what is abnormal.", "Give me the positive findings.", "List any abnormalities."),
        "fragment": ("findings?", "anything abnormal?", "any pathology?", "abnormal?", "positive findings?", "abnormalities?"),
        "shorthand": ("abnl?", "any path?", "+ findings?", "sig findings?"),
    },
    "either_side": {
        "question": ("Is the <x> on the left or on the right?", "Is it a left or a right <x>?", "Left- or right-sided <x>?",
                     "Is the <x> left or right?", "Is the <x> in the left or right <side organ>?", "Is the <x> on the left or the right?",
                     "Is the <x> {located |}on the right or the left?", "Is the <x> right or left?"),
        "fragment": ("left or right <x>?", "<x>: left or right?", "<x> - left or right?", "<x>: right or left?"),
        "shorthand": ("<x> L or R?", "<x> lt or rt?", "L vs R <x>?"),
    },
    "either_phase": {
        "question": ("Is this <p1> or <p2> phase?", "Was <this study> {scanned|acquired} in the <p1> or the <p2> phase?",
                     "Is this the <p1> or the <p2> phase?", "Is this phase <p1> or <p2>?", "Is <this study> <p1> or <p2>?"),
        "fragment": ("<p1> or <p2>?", "<p1> vs <p2> phase?", "<p1> or <p2> phase?", "phase: <p1> or <p2>?"),
        "shorthand": ("<p1> vs <p2>?", "<p1>/<p2>?"),
    },
    "either_size": {
        "question": ("Is the <x> small or large?", "Is the <x> big or small?", "Is the <x> large or small?", "Big or small <x>?"),
        "fragment": ("<x>: big or small?", "<x> small or large?"),
    },
    "either_larger": {
        "question": ("Is the left or the right <pair> larger?", "Is the left or right <pair> bigger?", "Which is bigger, left or right <pair>?",
                     "Is the right or the left <pair> larger?"),
        "fragment": ("left or right <pair> bigger?", "bigger <pair>: left or right?", "larger <pair> L or R?"),
    },
    "either_findings": {
        "question": ("Is it <x> or <y>?", "Is this <x> or <y>?", "Which is it: <x> or <y>?", "Do you see <x> or <y>?",
                     "Is there <a x> or <a y>?", "Is this more like <x> or <y>?"),
        "fragment": ("<x> or <y>?", "<x> vs <y>?", "<x> or <y> - which?"),
        "shorthand": ("?<x> vs ?<y>", "<x> vs <y> pls", "?<x> or ?<y>"),
    },
    "likelihood": {
        "question": ("How likely is <a x>?", "What is the probability of <x>?", "What's the likelihood of <x>{| on <this study>}?",
                     "How confident are you that there is <a x>?", "Is <x> likely?", "How probable is <x>?", "What are the odds of <x>?",
                     "Is <a x> {likely|probable|possible}?", "How sure is the {model|classifier|expert} about <x>?",
                     "What is the chance of <x>{| here}?", "How likely is it that the patient has <a x>?"),
        "terse": ("Give me the probability of <x>.", "Tell me how likely <x> is.", "Score the likelihood of <x>.",
                  "Rate the probability of <x>."),
        "fragment": ("<x> probability?", "p(<x>)?", "<x> likelihood?", "<x> prob?", "chance of <x>?", "<x> - likely?",
                     "probability <x>", "likelihood of <x>?"),
        "shorthand": ("<x> %?", "prob <x>?", "likelihood of <x> pls", "<x> ?likely", "<x> prob pls"),
    },
    "negation": {
        "question": ("There's no <x>, right?", "No <x>, correct?", "No <x>, right?", "Is there no <x>?", "There isn't <a x>, is there?",
                     "You don't see <a x>, do you?", "Can we exclude <x>?", "Can you rule out <x>?", "Am I right that there is no <x>?",
                     "So no <x>?", "Is <x> absent?", "Can <x> be ruled out?", "Nothing to suggest <x>, right?", "I assume no <x>?",
                     "There are no <xs>, are there?", "Is <x> excluded?"),
        "terse": ("Confirm no <x>.", "Confirm there is no <x>.", "Rule out <x>.", "Exclude <x> please.", "Make sure there's no <x>.",
                  "Tell me there is no <x>."),
        "fragment": ("no <x>?", "<x> absent?", "<x> ruled out?", "neg for <x>?", "<x> excluded?", "no <x> right?", "no <xs>?"),
        "shorthand": ("no <x> correct?", "neg <x>?", "<x> neg?", "no e/o <x>?", "<x> - neg?", "r/o'd <x>?", "no <x> pls confirm"),
    },
    "report": {
        "question": ("Can you write a report{| for <this study>}?", "Could you draft the {radiology |}report?", "What would the report say?",
                     "Can you give me a {short |brief |}report?", "Could you summarize <this study>?", "What's your read{| on <this study>}?",
                     "What are the findings and impression?", "Can I get a {prelim|preliminary} report?"),
        "terse": ("Write a report{| for <this study>}.", "Draft the report.", "Report <this study>{| please}.", "Dictate a report.",
                  "Give me findings and impression.", "Summarize the findings.", "Read <this study>.", "Write up <this study>."),
        "fragment": ("report?", "report pls", "findings + impression?", "summary?", "prelim read?", "full report", "impression?",
                     "report for <this study>"),
        "shorthand": ("prelim read pls", "wet read?", "pls dictate", "impression pls", "quick read?", "F+I pls"),
    },
    "run_expert": {
        "question": ("Can you run the <expert>{| on <this study>}?", "Could you run <expert>?", "Would you run the <expert> for me?",
                     "Can you apply the <expert>?", "What does the <expert> say?", "What does <expert> show?",
                     "Can you put <this study> through the <expert>?"),
        "terse": ("Run <expert>.", "Run the <expert>{| on <this study>}.", "Apply the <expert>.", "Use the <expert>{| please}.",
                  "Call the <expert>.", "Execute <expert>.", "Launch the <expert>."),
        "fragment": ("<expert>?", "<expert> pls", "run <expert>", "<expert> results?", "<expert> output?"),
        "shorthand": ("pls run <expert>", "<expert> on this", "<expert> stat", "run <expert> pls"),
    },
    "segment_everything": {
        "question": ("Can you segment everything{| on <this study>}?", "Could you segment all organs and lesions?",
                     "Can you segment the whole {scan|study|volume}?", "Could you do a full segmentation?"),
        "terse": ("Segment everything{| on <this study>}.", "Segment all organs and lesions.", "Do a full segmentation{| please}.",
                  "Segment all structures.", "Segment the whole {scan|study}."),
        "fragment": ("full segmentation?", "segment all", "seg everything", "everything segmented please", "whole-study segmentation"),
        "shorthand": ("full seg pls", "seg all", "total seg pls"),
    },
    "segment_organs": {
        "question": ("Can you segment all the organs?", "What are the organ volumes?", "Could you measure every organ?"),
        "terse": ("Segment all the organs.", "Measure all organs.", "Give me all organ volumes."),
        "fragment": ("organ volumes?", "all organ volumes", "organ volumetry?"),
        "shorthand": ("organ vols pls", "seg organs"),
    },
    "segment_lesions": {
        "question": ("Can you find all the lesions?", "Are there any lesions anywhere?", "Could you segment all lesions?"),
        "terse": ("Find all lesions.", "Segment all lesions{| please}.", "Look for lesions everywhere."),
        "fragment": ("all lesions?", "any lesions?", "lesions anywhere?"),
        "shorthand": ("seg lesions pls", "lesion survey pls"),
    },
    "segment_tumor": {
        "question": ("Can you segment the tumor{| and its subregions}?", "Could you outline the whole tumor?",
                     "Can you do a full tumor segmentation?"),
        "terse": ("Segment the tumor{| and its subregions}.", "Segment the whole tumor.", "Do a full tumor segmentation.",
                  "Segment all tumor compartments.", "Outline the tumor{| please}."),
        "fragment": ("tumor segmentation?", "tumor subregions?", "tumor compartments?"),
        "shorthand": ("seg tumor pls", "tumor seg + vols"),
    },
}

# The experts, by the names clinicians and papers use for them (VILA-M3's VISTA3D / BRATS / CXR among them).
EXPERT_NAMES = {
    "ct": ("ct_segmentation", "CT segmentation", "CT segmentation expert", "segmentation model", "segmenter", "VISTA3D", "vista3d",
           "organ segmentation", "TotalSegmentator", "auto-segmentation", "CT expert", "segmentation tool"),
    "mri": ("mri_brain_tumor", "brain tumor segmentation", "brain tumour expert", "BraTS model", "BraTS", "tumor segmenter",
            "glioma segmentation", "MRI expert", "brain tumor model"),
    "cxr": ("cxr_classification", "chest X-ray classifier", "CXR classifier", "CXR model", "classifier", "finding classifier",
            "torchxrayvision", "chest X-ray AI", "CXR expert", "radiograph classifier"),
}
STUDY_NAMES = {
    "ct": ("CT", "scan", "CT scan", "study", "CT study", "exam", "images", "ct"),
    "mri": ("MRI", "MR", "scan", "brain MRI", "study", "MR brain", "exam", "MRI brain"),
    "cxr": ("CXR", "chest X-ray", "X-ray", "film", "radiograph", "chest film", "image", "study", "CXR film", "chest radiograph"),
}
# the contrast phases of the CT phantoms and how they are written
PHASE_NAMES = {
    "non-contrast": ("non-contrast", "unenhanced", "plain", "non-con", "precontrast", "noncontrast", "NC"),
    "arterial": ("arterial", "late arterial", "early arterial", "art", "arterial-phase"),
    "portal venous": ("portal venous", "venous", "PV", "portovenous", "portal", "portal-venous"),
}
# the organ a lesion's side is named by ("Is the cyst in the left or right kidney?")
SIDE_ORGAN = {"kidney cyst": ("kidney",), "lung nodule": ("lung",), "tumor": ("hemisphere",)}

_NOT_NOUNS = {"cardiomegalic", "enhances", "enhance", "enhancing", "contrast-enhancing", "ring-enhancing", "necrotic", "heart size",
              "cardiac size", "cardiac silhouette", "cardiothoracic ratio", "ctr", "lights up with contrast", "phase", "contrast"}
_ADJECTIVE_END = ("ic", "al", "ary")
_UPPER = {"flair": "FLAIR", "t2": "T2", "t1": "T1", "iv": "IV", "ct": "CT", "mri": "MRI", "i": "I"}
_MASS = {"edema", "necrosis", "fluid", "consolidation", "enhancement", "swelling", "pneumonia", "cardiomegaly", "hydrothorax",
         "contrast", "air", "tissue", "disease", "signal", "hyperintensity", "blunting", "malignancy"}


@lru_cache(maxsize=None)
def noun_names(key: str) -> tuple[str, ...]:
    """The lexicon names of ``key`` that read as a noun phrase ("renal cyst", "bosniak cyst", "PTX"), not adjectives."""
    return tuple(n for n in TERMS[key].names if n not in _NOT_NOUNS and not _adjective(n))


@lru_cache(maxsize=None)
def modifier_names(key: str) -> tuple[str, ...]:
    """Names of an organ that fit before "volume": nouns and adjectives ("liver", "hepatic", "lt kidney"), no "both ...":
    "renal volume", "lt kidney vol"."""
    return tuple(n for n in TERMS[key].names if not n.startswith("both "))


@lru_cache(maxsize=None)
def normal_subjects(key: str) -> tuple[str, ...]:
    """What a normality question about ``key`` names: the organ a lesion lies in ("the kidneys", "renal parenchyma"), the
    heart's size for cardiomegaly, the pleural spaces for an effusion, the brain for a brain tumour."""
    term = TERMS[key]
    if key == "cardiomegaly":
        return ("heart size", "cardiac size", "cardiac silhouette", "cardiothoracic ratio", "CTR", "heart", "size of the heart",
                "heart shadow", "cardiomediastinal silhouette")
    if key == "pleural effusion":
        return ("pleural spaces", "costophrenic angles", "CP angles", "pleura", "pleural space")
    if key == "tumor":
        return ("brain", "brain parenchyma", "brain MRI")
    organ = term.organ if term.organ in TERMS else ""
    return tuple(n for n in noun_names(organ) if not n.startswith("both ")) if organ else ()


def pick_name(names: tuple[str, ...], rng: np.random.Generator, key: str | None = None) -> str:
    """One name, the key itself (when given) a third of the time so the canonical word stays common."""
    if key is not None and key in names and rng.random() < 0.33:
        return display(key)
    return display(names[int(rng.integers(len(names)))])


@lru_cache(maxsize=None)
def display(name: str) -> str:
    """How a lexicon name is written: abbreviations upper case ("ptx" → "PTX"), eponyms capitalised ("Bosniak")."""
    words = name.split(" ")
    out = []
    for w in words:
        if w in _UPPER:
            out.append(_UPPER[w])
        elif w == "bosniak":
            out.append("Bosniak")
        else:
            out.append(w)
    text = " ".join(out)
    for term in TERMS.values():
        if name in term.abbreviations and len(name) <= 4 and " " not in name and name not in ("mets", "eff"):
            return name.upper()
    return text


def plural(name: str) -> str:
    """'renal cyst' → 'renal cysts', 'lump in the liver' → 'lumps in the liver', 'metastasis' → 'metastases'; plural and mass
    nouns ('mets', 'edema') stay as they are."""
    for sep in (" in the ", " on the ", " of the ", " around the ", " with "):
        head, found, tail = name.partition(sep)
        if found:
            return plural(head) + found + tail
    last = name.split(" ")[-1]
    stem = name[: len(name) - len(last)]
    low = last.lower()
    if _is_plural(name) or low in _MASS or low.endswith("ness"):
        return name
    if low in ("i", "1"):  # "Bosniak I"
        return name + " lesions"
    if low.isalpha() and last.isupper():
        return name + "s"
    if low.endswith("thorax"):
        return stem + last[:-2] + "ces"
    if low.endswith("sis"):
        return stem + last[:-2] + "es"
    if low.endswith(("s", "x", "sh", "ch")):
        return name + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return stem + last[:-1] + "ies"
    return name + "s"


def with_determiner(name: str, rng: np.random.Generator) -> str:
    """'a renal cyst', 'an HCC', 'any effusion', 'any liver lesions' or a bare plural / mass noun."""
    last = name.split(" ")[-1].lower()
    if _is_plural(name) or last in _MASS:
        return name if rng.random() < 0.4 else "any " + name
    r = rng.random()
    if r < 0.25:
        return "any " + name
    if r < 0.35:
        return "any " + plural(name)
    return _article(name) + " " + name


def _article(word: str) -> str:
    first = word.split(" ")[0]
    if first.isupper() and len(first) > 1:
        return "an" if first[0] in "AEFHILMNORSX" else "a"
    return "an" if first[:1].lower() in "aeiou" and not first.lower().startswith(("uni", "use", "one")) else "a"


def _is_plural(name: str) -> bool:
    last = name.split(" ")[-1].lower()
    if last in ("mets", "metastases", "pneumothoraces", "vertebrae", "lungs", "kidneys"):
        return True
    return len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is", "sis"))


def _adjective(name: str) -> bool:
    last = re.sub(r"[^a-z]", "", name.split(" ")[-1].lower())
    return len(name.split(" ")) <= 2 and last.endswith(_ADJECTIVE_END) and last not in ("cyst", "lobar")
