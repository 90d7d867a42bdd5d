"""LLM-as-judge: rubrics, fenced prompts, answer parsing, the OpenAI-compatible client, pairwise judging, the local
judge server."""

from judges.client import JudgeClient, JudgeEndpoint
from judges.local_server import local_judge
from judges.pairwise import pairwise_runs
from judges.rubric import Rubric, find_rubric
from judges.scoring import RubricJudge

__all__ = ["JudgeClient", "JudgeEndpoint", "Rubric", "RubricJudge", "find_rubric", "local_judge", "pairwise_runs"]
