"""`synth`: a teacher (an OpenAI-compatible endpoint, or a local model through our decompose engine)
writes decompositions for questions that have none; only answers that pass validate-data's checks
and that the teacher's own samples agree on are kept.

    settings = SynthSettings(teacher="http://127.0.0.1:8000/v1", samples=5, temperature=0.7)
    report = synth(read_questions("questions.txt"), "data/synth.jsonl", settings, examples="my_examples.jsonl")

Modules: settings.py (the options, checked), prompt.py (demonstrations by language, chat messages,
prompt hash), remote.py (the HTTP client: retries, Retry-After, n), teachers.py (URL and local
teachers behind one interface), consensus.py (valid candidates, agreement by SARI), writer.py
(FILE.jsonl + FILE.dropped.jsonl, appended durably, repaired on resume), run.py (the run loop),
plan.py (--dry-run).
"""

from __future__ import annotations

from qdtool.core.synth.consensus import Candidate, Verdict, agreement_scores, check_candidate, judge
from qdtool.core.synth.plan import SynthPlan, plan
from qdtool.core.synth.prompt import build_messages, demo_pool, prompt_hash, select_demos
from qdtool.core.synth.remote import OpenAITeacher, TeacherError, api_key_from_env, is_url
from qdtool.core.synth.run import SynthProgress, SynthReport, read_examples, synth
from qdtool.core.synth.settings import SynthSettings
from qdtool.core.synth.writer import SynthOutput, dropped_path

__all__ = ["Candidate", "OpenAITeacher", "SynthOutput", "SynthPlan", "SynthProgress", "SynthReport", "SynthSettings", "TeacherError",
           "Verdict", "agreement_scores", "api_key_from_env", "build_messages", "check_candidate", "demo_pool", "dropped_path", "is_url",
           "judge", "plan", "prompt_hash", "read_examples", "select_demos", "synth"]
