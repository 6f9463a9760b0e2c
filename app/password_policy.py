"""The password policy ``m3 hash-password`` (``app.auth.hash_password``) enforces: at least 8 characters, not
one of the most breached passwords (in any case, with digits or punctuation added at either end), not a run of one
character or of a keyboard / alphabet / digit sequence, and not containing the user's own name.

The list is the head of the public breach-frequency rankings (SecLists, NCSC's 100k list); a short list written
here, because a full strength estimator (zxcvbn) is a large dependency for the same refusal of what people reuse.
"""

from __future__ import annotations

from app.config import ConfigError

__all__ = ["MIN_PASSWORD_CHARS", "PasswordPolicyError", "check_password", "COMMON_PASSWORDS"]

MIN_PASSWORD_CHARS = 8

COMMON_PASSWORDS = frozenset("""
password passw0rd p@ssword p@ssw0rd pass password1 qwerty qwertz azerty letmein welcome welcome1 admin administrator
root toor login master monkey dragon football baseball soccer hockey basketball superman batman iloveyou trustno1
sunshine princess shadow michael jennifer jordan hunter ranger buster thomas robert daniel charlie andrew jessica
pepper ginger summer winter spring autumn freedom whatever starwars pokemon secret changeme default guest test
testing hello hello123 abc123 abcd1234 qwerty123 qazwsx zaq12wsx 1q2w3e4r 1qaz2wsx q1w2e3r4 asdfghjk zxcvbnm
computer internet google samsung apple mustang harley ferrari hospital doctor nurse patient medical clinic radiology
health healthcare pacs dicom m3 m3admin company temp temppassword access secure security mypassword
""".split())

_SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiopasdfghjklzxcvbnm", "qwertzuiopasdfghjklyxcvbnm",
              "azertyuiopqsdfghjklmwxcvbn", "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p")


class PasswordPolicyError(ConfigError):
    """A password the policy refuses; the message says why and what would pass (never the password itself)."""


def check_password(password: str, username: str = "") -> None:
    """Raise ``PasswordPolicyError`` when ``password`` breaks the policy (see the module); return quietly otherwise."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise PasswordPolicyError(
            f"password must be at least {MIN_PASSWORD_CHARS} characters, got {len(password)}; "
            "choose a longer one (a few unrelated words are easy to remember)."
        )
    lowered = password.lower()
    core = lowered.strip("0123456789!@#$%^&*()-_=+.,;:?/ ")
    if lowered in COMMON_PASSWORDS or core in COMMON_PASSWORDS:
        raise PasswordPolicyError("password is on the list of the most breached passwords (or one with digits or "
                                  "symbols added); choose one nobody else uses.")
    if len(set(lowered)) == 1 or any(lowered in seq or lowered in seq[::-1] for seq in _SEQUENCES):
        raise PasswordPolicyError("password is one repeated character or a keyboard, alphabet or digit sequence; "
                                  "choose one that is not a pattern.")
    if username and len(username) >= 3 and username.lower() in lowered:
        raise PasswordPolicyError("password contains the user name; choose one that does not.")
