"""The agent loop shared by every synthesis role (env builder, question builder, answerers, verifier,
tool/solution/verifier writers, solvers, grader).

    from agent import Agent, StoreRecorder, tool

    @tool
    def search(query: str) -> list[dict]:
        \"\"\"Search the corpus.

        Args:
            query: Words to look for.
        \"\"\"

    agent = Agent("question_builder", config, tools=[search], recorder=StoreRecorder(store))
    result = agent.run_sync("Write a question about the long-tail entity ...")
    result.final_answer, result.stop_reason, result.usage.total_tokens, result.cost_usd
"""

from agent.accounting import (BufferedRecorder, CallRecord, NullRecorder, Recorder, StoreRecorder,
                              TrajectoryRecord, call_cost, write_records)
from agent.endpoint import EndpointLimiter, limiter_for
from agent.errors import AgentError
from agent.history import drop_stale_reasoning, wire_messages
from agent.loop import Agent, AgentResult, StopReason, Usage
from agent.prompts import load_prompt
from agent.text_calls import TextCall, parse_text_calls
from agent.tools import Tool, as_tool, registered_tool, schema_for, tool

__all__ = [
    "Agent", "AgentError", "AgentResult", "BufferedRecorder", "CallRecord", "EndpointLimiter", "NullRecorder",
    "Recorder", "StopReason", "StoreRecorder", "TextCall", "Tool", "TrajectoryRecord", "Usage", "as_tool",
    "call_cost", "drop_stale_reasoning", "limiter_for", "load_prompt", "parse_text_calls", "registered_tool",
    "schema_for", "tool", "wire_messages", "write_records",
]
