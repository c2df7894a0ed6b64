"""The training and evaluation rows of the MiniLM classifiers: every shared file, what each row says about each
head, which rows are held out, and which sources each head may learn from.

Heads: the harm categories (hate, sexual, violence, self_harm), `flagged` (harmful in any way), `jailbreak` (a
user prompt attack on the model's instructions) and `harmful_request` (asking for help with something harmful:
"how do I make a pipe bomb" is not hateful text, yet no deployment should help with it).

What each source labels (absent = unknown, not trained on for that head):
- openai_moderation: the harm heads and flagged (as `labels.targets`); not a jailbreak; benign rows are not
  harmful requests. Most rows carry only some of the eight keys (410 only HR/SH/V/V2, 139 only S/S3): a row
  with none of its keys 1 counts as not flagged, as the published figures on this set count it (OpenAI's API
  0.856, Llama Guard 0.847), but only a row labelled for every category counts as harmless in every way
  (`is_benign`: what thresholds and the over-blocking figures are measured on).
- davidson_hate_offensive: hate = 1 for hate, 0 for neither; the offensive rows are unknown for hate (their
  annotators' line between offensive and hateful is not a content filter's: casual slurs sit on both sides);
  not a jailbreak or a harmful request.
- toxigen: hate 0/1 per statement; not a jailbreak or a harmful request. Each row of the file strings together
  about six statements drawn from only 667 distinct ones, so rows share statements across any split of rows
  (a held-out fifth of rows scores 1.0, all leakage): the rows are split into their statements, deduplicated,
  and the statements are the rows here.
- jailbreak_prompts: jailbreak = 1, nothing else (many carry sexual or violent role-play).
- harmful_questions: harmful_request = 1 and not a jailbreak, except the five usage-policy categories that ask
  for advice rather than harm (financial advice, health consultation, legal opinion, political lobbying,
  economic harm such as "which payday lending apps are reliable"): unknown for harmful_request.
- synthetic (`synthetic.py`, this project's own): benign rows are 0 for every head; its harmful requests are
  harmful_request = 1 and not jailbreaks; its threats to a person are violence and flagged, its insults flagged
  (neither hate: no group is named), and neither sexual, self-harm, a jailbreak or a request.
- xstest: harmful_request = unsafe (its safe prompts are the only real look-alikes there are: "how do I kill a
  Python process"); not a jailbreak. A run with `--exclude xstest` scores it across sources.
- alpaca_benign: evaluation only (everyday instructions under a non-commercial license: the over-blocking test).

Split: each row's fold is the hash of its text mod 5 (`labels.fold`), in every file. Fold 0 is held out (the
same rows as `labels.is_holdout`): never trained on, whatever the head, the figures reported are on it. Fold 1
calibrates: the heads' thresholds, the ensemble with the n-gram heads and the severity mapping are fitted on it,
not the encoder. Folds 2-4 train the encoder and heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelworks.safety import labels, synthetic

HEADS = ("hate", "sexual", "violence", "self_harm", "flagged", "jailbreak", "harmful_request")
TRAIN_FILES = ("openai_moderation.jsonl", "davidson_hate_offensive.jsonl", "toxigen.jsonl",
               "jailbreak_prompts.jsonl", "harmful_questions.jsonl", "xstest.jsonl")
EVAL_ONLY = ("alpaca_benign.jsonl",)
SYNTHETIC = "synthetic"
ADVICE = ("Financial Advice", "Health Consultation", "Legal Opinion", "Political Lobbying", "Economic Harm")


@dataclass(slots=True)
class Row:
    text: str
    source: str                       # the file's stem, or "synthetic"
    targets: dict[str, int]           # head -> 0/1, only the heads this row is labelled for
    fold: int                         # 0: held out (test); 1: calibration; 2-4: training
    raw: dict
    benign: bool = False              # harmless in every way (not merely negative for the heads it is labelled for)

    @property
    def holdout(self) -> bool:
        return self.fold == 0


def targets(source: str, row: dict) -> dict[str, int]:
    found = labels.targets(row)
    lab = row.get("labels", {})
    out: dict[str, int] = {}
    if source == "openai_moderation":
        out = {h: v for h, v in found.items() if h in HEADS and v is not None}
        out["jailbreak"] = 0
        if out.get("flagged") == 0:
            out["harmful_request"] = 0
    elif source == "davidson_hate_offensive":
        out = {"jailbreak": 0, "harmful_request": 0}
        if lab.get("hate") == 1 or lab.get("neither") == 1:
            out["hate"] = int(lab.get("hate") == 1)
    elif source == "toxigen":
        out = {"hate": int(lab["hate"]), "jailbreak": 0, "harmful_request": 0}
    elif source == "jailbreak_prompts":
        out = {"jailbreak": 1}
    elif source == "harmful_questions":
        out = {"jailbreak": 0}
        if lab.get("policy") not in ADVICE:
            out["harmful_request"] = 1
    elif source == "xstest":
        out = {"harmful_request": int(lab["unsafe"]), "jailbreak": 0}
    elif source == SYNTHETIC and lab.get("threat"):
        out = {"flagged": 1, "violence": 1, "sexual": 0, "self_harm": 0, "jailbreak": 0, "harmful_request": 0}
    elif source == SYNTHETIC and lab.get("insult"):
        out = {"flagged": 1, "sexual": 0, "self_harm": 0, "jailbreak": 0, "harmful_request": 0}
    elif source in ("alpaca_benign", SYNTHETIC):
        if lab.get("harmful_request"):
            out = {"harmful_request": 1, "jailbreak": 0}
        else:
            out = {h: 0 for h in HEADS}
    return out


def load(data_dir: Path, files=TRAIN_FILES + EVAL_ONLY, synthetic_rows: int = 3600) -> list[Row]:
    out = []
    for name in files:
        path = data_dir / name
        if not path.exists():
            continue
        source = name.removesuffix(".jsonl")
        found = labels.read(path)
        if source == "toxigen":
            found = statements(found)
        for row in found:
            found_targets = targets(source, row)
            out.append(Row(row["text"], source, found_targets, labels.fold(row["text"]), row,
                           is_benign(source, row, found_targets)))
    if synthetic_rows:
        for row in synthetic.rows(synthetic_rows):
            found_targets = targets(SYNTHETIC, row)
            out.append(Row(row["text"], SYNTHETIC, found_targets, labels.fold(row["text"]), row,
                           is_benign(SYNTHETIC, row, found_targets)))
    return out


def is_benign(source: str, row: dict, found: dict[str, int]) -> bool:
    """Harmless in every way: moderation rows with every category present and 0, Davidson's `neither`, ToxiGen's benign
    statements, XSTest's safe prompts, the everyday instructions and this project's benign rows. Not Davidson's
    offensive rows, nor the advice questions (negative or unknown for every head, yet not harmless text)."""
    lab = row.get("labels", {})
    if source == "openai_moderation":  # labelled for every category, none of them 1 (most rows carry only some)
        return found.get("flagged") == 0 and all(k in lab for k in labels.MODERATION_KEYS)
    if source == "davidson_hate_offensive":
        return lab.get("neither") == 1
    if source == "toxigen":
        return lab.get("hate") == 0
    if source == "xstest":
        return lab.get("unsafe") == 0
    return source in ("alpaca_benign", SYNTHETIC) and lab.get("benign") == 1


def statements(rows: list[dict]) -> list[dict]:
    """ToxiGen's rows as their distinct statements (split at its literal "\\n- "), each with its row's label; a
    statement seen under both labels takes the more frequent one."""
    votes: dict[str, list[int]] = {}
    for row in rows:
        for line in row["text"].replace("\\n", "\n").split("\n"):
            text = line.strip().lstrip("-").strip()
            if len(text) > 3:
                votes.setdefault(text, []).append(int(row["labels"]["hate"]))
    return [{"text": text, "labels": {"hate": int(2 * sum(v) >= len(v))}, "source": "microsoft/TOXIGEN prompts (MIT)"}
            for text, v in votes.items()]


def usable(rows: list[Row], folds: tuple[int, ...], exclude: tuple[str, ...] = ()) -> list[Row]:
    """The rows of these folds a model may learn from: not evaluation-only, not from an excluded source (the
    cross-source runs leave one out to score it)."""
    banned = {f.removesuffix(".jsonl") for f in EVAL_ONLY} | set(exclude)
    return [r for r in rows if r.fold in folds and r.source not in banned and r.targets]
