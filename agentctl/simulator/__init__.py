"""An OpenAI-compatible model server for tests, load tests and demos: `agentctl llm simulate`.

Deterministic answers derived from the input, tool calls on request, JSON mode (with answers to mem0's memory
prompts), configurable latency and fault injection, and an admin API under /_simulator to change all that at
runtime. No database, no agentctl settings: it stands alone.

Answer rules, in order:
1. The conversation ends with tool results: "Tool results: <name>: <content>; ..." (if those results contain
   ``call:<tool>`` directives and tools are offered, those calls instead, so a test can drive a longer loop).
2. One of mem0's memory prompts: the JSON mem0 parses, built from the user's own declarative sentences.
3. The first script rule whose ``match`` is in the last user message: the system prompt (``echo_system``), its
   tool calls (when tools are offered) or its content.
4. Tools are offered and the last user message has ``call:<tool> {json arguments}`` directives: those calls.
5. Otherwise up to 8 words echoed from the last user message, then filler words picked by a hash of the
   whole conversation: ``answer_tokens`` tokens, cut at max_tokens with finish_reason "length".
In JSON mode (response_format json_object / json_schema) text answers are wrapped as ``{"answer": ...}``, or
fill the schema's required fields.
"""

from agentctl.simulator.app import SimulatorApp, create_simulator_app
from agentctl.simulator.config import (
    FaultSpec,
    ScriptedToolCall,
    ScriptRule,
    SimulatorConfig,
    SimulatorConfigError,
    load_config_file,
    load_script_file,
)
from agentctl.simulator.process import RunningSimulator

__all__ = [
    "FaultSpec",
    "RunningSimulator",
    "ScriptRule",
    "ScriptedToolCall",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorConfigError",
    "create_simulator_app",
    "load_config_file",
    "load_script_file",
]
