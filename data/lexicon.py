"""The clinical lexicon: every structure and finding the experts report, by the words clinicians use for it.

One entry per expert vocabulary key ("liver tumor", "pleural effusion", "edema"): its synonyms and descriptive
phrases, abbreviations, eponyms and lay terms. The question parser (``vlm.intent``) reads a question's findings
through it, the experts declare their vocabularies from it, and the training-data generators phrase questions with
it. Written from clinical usage (radiology report language, common abbreviations), never from an evaluation set.

``find_terms`` matches a question against the lexicon: whole words, plurals, British / American spellings, and one
typo per word of five letters or more (``rapidfuzz``'s Levenshtein distance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rapidfuzz.distance import Levenshtein

__all__ = ["Term", "TERMS", "TermMatch", "NORMAL_STATES", "find_terms", "normal_state", "one_typo", "words_of", "normalise_text"]


@dataclass(frozen=True)
class Term:
    """One structure or finding. ``key`` is the experts' name for it; ``kind`` is ``organ``, ``lesion``
    (a CT lesion type), ``finding`` (a radiograph or MRI finding), ``subregion`` (a tumour part) or ``phase``.
    ``organ``: the organ a lesion lies in (its name in questions narrows "cyst" to the kidney's)."""

    key: str
    kind: str
    synonyms: tuple[str, ...] = ()
    abbreviations: tuple[str, ...] = ()
    eponyms: tuple[str, ...] = ()
    lay: tuple[str, ...] = ()
    modality: str = ""  # CT | MR | CR: the study kind whose expert reports it
    organ: str = ""
    paired: bool = False  # a left / right pair ("left kidney"): the side names one of them

    @property
    def names(self) -> tuple[str, ...]:
        """Every name, the key first."""
        return tuple(dict.fromkeys((self.key, *self.synonyms, *self.abbreviations, *self.eponyms, *self.lay)))


_T = Term
TERMS: dict[str, Term] = {t.key: t for t in (
    # ---- CT organs
    _T("liver", "organ", ("hepatic", "hepar", "liver parenchyma", "hepatic parenchyma"), modality="CT"),
    _T("spleen", "organ", ("splenic", "lien"), modality="CT"),
    _T("left kidney", "organ", ("left renal", "left kidney", "lt kidney", "l kidney"), ("lk",), modality="CT", organ="kidney", paired=True),
    _T("right kidney", "organ", ("right renal", "right kidney", "rt kidney", "r kidney"), ("rk",), modality="CT", organ="kidney", paired=True),
    _T("kidneys", "organ", ("kidney", "renal", "both kidneys", "nephric"), modality="CT"),
    _T("left lung", "organ", ("left lung", "left pulmonary", "lt lung", "left hemithorax"), ("ll",), modality="CT", organ="lung", paired=True),
    _T("right lung", "organ", ("right lung", "right pulmonary", "rt lung", "right hemithorax"), ("rl",), modality="CT", organ="lung", paired=True),
    _T("lungs", "organ", ("lung", "pulmonary", "lung fields", "both lungs"), modality="CT"),
    _T("heart", "organ", ("cardiac", "myocardium", "cardiac silhouette"), lay=("ticker",), modality="CT"),
    _T("aorta", "organ", ("aortic", "abdominal aorta", "thoracic aorta"), modality="CT"),
    _T("spine", "organ", ("spinal", "vertebra", "vertebrae", "vertebral", "vertebral column", "spinal column", "vertebral bodies"),
       lay=("backbone",), modality="CT"),
    # ---- CT lesions
    _T("liver tumor", "lesion",
       ("liver lesion", "hepatic lesion", "liver mass", "hepatic mass", "hepatic tumor", "liver neoplasm", "hepatic neoplasm",
        "focal liver lesion", "focal hepatic lesion", "liver metastasis", "hepatic metastasis", "liver metastases",
        "hepatic metastases", "hepatocellular carcinoma", "tumor", "mass", "hepatoma", "liver cancer", "hypervascular liver lesion",
        "space-occupying lesion in the liver", "liver nodule", "hepatic nodule", "liver focus"),
       ("hcc", "fll", "mets", "liver mets"), lay=("growth on the liver", "spot on the liver", "liver spot", "lump in the liver"),
       modality="CT", organ="liver"),
    _T("lung nodule", "lesion",
       ("pulmonary nodule", "lung lesion", "pulmonary lesion", "lung mass", "pulmonary mass", "coin lesion",
        "solitary pulmonary nodule", "pulmonary opacity", "lung opacity", "nodular opacity", "pulmonary metastasis",
        "lung metastasis", "lung metastases", "lung node", "nodule", "pulm nodule", "pulmonary nodularity"),
       ("spn",), lay=("spot on the lung", "lung spot", "shadow on the lung", "lump in the lung"), modality="CT", organ="lungs"),
    _T("kidney cyst", "lesion",
       ("renal cyst", "cystic renal lesion", "renal cystic lesion", "simple cyst", "simple renal cyst", "cystic lesion of the kidney",
        "fluid-filled renal lesion", "fluid density renal lesion", "water density lesion", "fluid-density lesion",
        "fluid-filled lesion", "hypodense renal lesion", "cortical cyst", "parapelvic cyst", "cyst", "cystic",
        "cystic kidney", "cystic lesion"),
       eponyms=("bosniak", "bosniak cyst", "bosniak i", "bosniak 1"), lay=("fluid sac in the kidney", "water bubble in the kidney", "fluid-filled sac", "water-filled sac", "fluid pocket",
                                                                         "fluid sac", "kidney blister", "blister on the kidney", "bubble on the kidney"),
       modality="CT", organ="kidneys"),
    # ---- CT contrast phase
    _T("contrast phase", "phase",
       ("phase", "contrast timing", "enhancement phase", "scan phase", "phase of contrast", "contrast bolus", "bolus timing",
        "contrast", "iv contrast", "intravenous contrast"), modality="CT"),
    # ---- chest radiograph findings
    _T("cardiomegaly", "finding",
       ("enlarged heart", "heart enlargement", "cardiac enlargement", "enlarged cardiac silhouette", "enlarged heart shadow",
        "increased cardiothoracic ratio", "cardiothoracic ratio", "heart size", "cardiac size", "cardiac silhouette",
        "enlarged cardiac shadow", "cardiomegalic", "enlarged heart size"),
       ("ctr",), lay=("big heart", "large heart", "swollen heart"), modality="CR"),
    _T("pleural effusion", "finding",
       ("effusion", "effusions", "pleural fluid", "fluid in the pleural space", "hydrothorax", "blunted costophrenic angle",
        "blunting of the costophrenic angle", "costophrenic blunting", "meniscus sign", "pleural collection", "fluid around the lung",
        "fluid in the chest", "fluid collection in the chest", "fluid at the bases", "fluid at the lung bases", "basal fluid",
        "fluid at the base", "costophrenic angle blunting"),
       ("eff", "pl eff"), lay=("water on the lung", "water on the lungs", "fluid on the lung", "fluid on the lungs"), modality="CR"),
    _T("pneumothorax", "finding",
       ("air in the pleural space", "pleural air", "visceral pleural line", "tension pneumothorax", "collapsed lung",
        "lung collapse", "free air in the chest", "air around the lung", "pneumothoraces"),
       ("ptx", "pnx", "pneumo"), lay=("dropped lung", "punctured lung", "popped lung", "lung punctured", "hole in the lung", "air leak",
                                     "air leak around the lung", "lung down"), modality="CR"),
    _T("consolidation", "finding",
       ("airspace opacity", "air-space opacity", "airspace disease", "air-space disease", "pneumonia", "infiltrate",
        "infiltrates", "lobar pneumonia", "air bronchogram", "air bronchograms", "consolidated lung", "alveolar opacity",
        "lobar consolidation", "parenchymal opacity"),
       ("consol", "cap"), lay=("chest infection", "lung infection"), modality="CR"),
    _T("nodule", "finding",
       ("lung nodule", "pulmonary nodule", "nodular opacity", "coin lesion", "solitary pulmonary nodule", "lung mass",
        "pulmonary mass", "round opacity", "lung lesion"),
       ("spn",), lay=("spot on the lung", "lung spot", "shadow on the lung"), modality="CR"),
    # ---- brain MRI tumour and subregions
    _T("tumor", "finding",
       ("brain tumor", "mass", "lesion", "neoplasm", "glioma", "glioblastoma", "high-grade glioma", "intracranial mass",
        "brain mass", "brain lesion", "space-occupying lesion", "whole tumor", "intra-axial mass", "malignancy",
        "cerebral tumor", "cerebral mass"),
       ("gbm", "hgg", "sol", "wt"), lay=("growth", "growth in the brain", "lump", "brain cancer", "cancer in the brain", "growth in the head"), modality="MR"),
    _T("tumor core", "subregion", ("core", "tumor core", "solid core"), ("tc",), modality="MR"),
    _T("enhancing tumor", "subregion",
       ("enhancing tumor", "enhancement", "contrast enhancement", "enhancing component", "enhancing rim", "rim enhancement",
        "contrast-enhancing", "enhancing lesion", "enhancing part", "ring enhancement", "ring-enhancing", "enhances", "enhance",
        "enhancing"),
       ("et",), lay=("lights up with contrast", "lights up with dye", "bright part of the tumor", "part that lights up", "bright rim"), modality="MR"),
    _T("necrotic core", "subregion",
       ("necrosis", "necrotic", "necrotic center", "central necrosis", "non-enhancing core", "necrotic component",
        "necrotic tissue", "necrotic part"),
       ("ncr", "net"), lay=("dead tissue", "dead centre"), modality="MR"),
    _T("edema", "subregion",
       ("peritumoral edema", "vasogenic edema", "perilesional edema", "surrounding edema", "flair hyperintensity",
        "t2 hyperintensity", "flair signal abnormality", "t2/flair signal", "white matter edema", "brain swelling"),
       ("ed",), lay=("swelling", "swelling around the tumor", "fluid around the tumor"), modality="MR"),
)}

# How clinicians say a finding is absent ("the lung is fully expanded": no pneumothorax; "costophrenic angles clear": no
# effusion). Asked as a question, such a phrase asks whether the study is normal as to that finding. Patterns read
# ``normalise_text`` output.
NORMAL_STATES: dict[str, tuple[str, ...]] = {
    "pneumothorax": (r"\blungs? (?:is |are |both )?(?:fully |completely |well )?(?:re-?)?(?:expanded|inflated)\b",
                     r"\b(?:both )?lungs? (?:is |are )?(?:fully )?up\b", r"\blungs? (?:is |are )?(?:fully )?(?:up|out) to the (?:chest )?wall\b"),
    "pleural effusion": (r"\bcostophrenic (?:angles?|recess(?:es)?) (?:is |are )?(?:clear|sharp|preserved|normal)\b",
                         r"\b(?:pleural spaces?|pleurae?) (?:is |are )?(?:clear|dry|normal)\b", r"\bsharp costophrenic angles?\b"),
    "cardiomegaly": (r"\bheart (?:is |looks )?(?:a )?normal (?:size|sized)\b", r"\bcardiac (?:size|silhouette) (?:is )?(?:within normal|normal)\b"),
}


def normal_state(text: str) -> str:
    """The finding ``text`` says is absent by one of ``NORMAL_STATES``' phrases, else ""."""
    t = normalise_text(text)
    return next((key for key, patterns in NORMAL_STATES.items() if any(re.search(p, t) for p in patterns)), "")


# British spellings and common variants written the American way before matching
_SPELLINGS = (("tumour", "tumor"), ("oedema", "edema"), ("haem", "hem"), ("centre", "center"), ("oesoph", "esoph"),
              ("paediatric", "pediatric"), ("anaesth", "anesth"), ("foetal", "fetal"), ("colour", "color"))


@dataclass(frozen=True)
class TermMatch:
    """Where a question names a term: ``key``, the matched name, and the word span ``[start, end)``."""

    key: str
    name: str
    start: int
    end: int
    exact: bool = True


def normalise_text(text: str) -> str:
    """Lower case, American spelling, punctuation spaced out, one space between words."""
    t = text.lower().replace("’", "'")
    for uk, us in _SPELLINGS:
        t = t.replace(uk, us)
    t = re.sub(r"(?<=\d)\s*cc\b", " ml", t)
    t = re.sub(r"[^a-z0-9'/%#.\- ]+", " ", t)
    t = re.sub(r"(?<![0-9])[.](?![0-9])", " ", t)
    return " ".join(t.split())


def words_of(text: str) -> list[str]:
    """The words of ``normalise_text(text)`` (hyphens and slashes split, possessive "'s" dropped)."""
    t = normalise_text(text).replace("'s ", " ").replace("'", "")
    return re.findall(r"[a-z0-9%]+(?:\.[0-9]+)?", t.replace("-", " ").replace("/", " "))


def find_terms(text: str, keys: tuple[str, ...] | None = None, extra: tuple[Term, ...] = ()) -> list[TermMatch]:
    """The terms ``text`` names, longest names first and no two overlapping, in order of appearance.

    keys: the terms to look for (default every term); extra: terms the lexicon lacks, looked for too (an expert's own
    structures). A name matches whole words; each word may be plural, and words of five letters or more may carry one
    typo ("nodlue", "efusion").
    """
    words = words_of(text)
    stems = [_stem(w) for w in words]
    taken = [False] * len(words)
    found: list[TermMatch] = []
    for name, key, name_stems in _names(keys, extra):
        n = len(name_stems)
        for i in range(len(words) - n + 1):
            if any(taken[i:i + n]):
                continue
            exact = stems[i:i + n] == list(name_stems)
            if exact or all(_close(a, b) for a, b in zip(stems[i:i + n], name_stems)):
                found.append(TermMatch(key, name, i, i + n, exact))
                taken[i:i + n] = [True] * n
    return sorted(found, key=lambda m: m.start)


@lru_cache(maxsize=32)
def _names(keys: tuple[str, ...] | None, extra: tuple[Term, ...] = ()) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, key, word stems) for every name of the chosen terms and of ``extra``, longest first (more words, then
    more letters)."""
    rows = []
    for key, term in [*TERMS.items(), *((t.key, t) for t in extra)]:
        if keys is not None and key not in keys:
            continue
        for name in term.names:
            stems = tuple(_stem(w) for w in words_of(name))
            if stems:
                rows.append((name, key, stems))
    rows.sort(key=lambda r: (-len(r[2]), -sum(map(len, r[2]))))
    return rows


def _stem(word: str) -> str:
    """A plural to its singular, roughly ("cysts" → "cyst", "metastases" → "metastasis", "kidneys" → "kidney")."""
    if len(word) > 5 and word.endswith("sses"):
        return word[:-2]  # "masses" → "mass"
    if len(word) > 4 and word.endswith("ses"):
        return word[:-2] + "is" if word.endswith("ases") else word[:-1]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _close(a: str, b: str) -> bool:
    """One typo (an edit or a swap of neighbours) apart, for words of five letters or more; a four-letter word that is a
    five-letter name's word with one letter dropped after its first two ("livr" for "liver"), unless it is a word itself."""
    if len(a) == 4 and len(b) == 5 and a[:2] == b[:2] and a not in _FOUR_LETTER_WORDS:
        return any(b[:i] + b[i + 1:] == a for i in range(2, 5))
    return one_typo(a, b)


# four-letter words that are a five-letter name's word with a letter dropped, and words in their own right
_FOUR_LETTER_WORDS = frozenset(("live", "spin", "hear", "hart", "bran", "brin", "mass", "lobe", "bone", "done", "gone",
                                "tone", "vein", "cyst", "lung", "left", "size", "side", "node", "bral", "head", "tumo"))


def one_typo(a: str, b: str, min_length: int = 5) -> bool:
    """Whether ``a`` is ``b`` with one typo (an edit or a swap of neighbours), both words of ``min_length`` letters or
    more and starting alike (the first letter, or the first two swapped)."""
    if a == b:
        return True
    if min(len(a), len(b)) < min_length or a[0] != b[0] and a[:2] != b[:2][::-1]:
        return False
    return Levenshtein.distance(a, b, weights=(1, 1, 1)) <= 1 or _swapped(a, b)


def _swapped(a: str, b: str) -> bool:
    if len(a) != len(b):
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
