"""The sandbox agent: a small static program that is each sandbox's init and starts its processes."""

from sandboxd.engine.agent._build import AGENT_NAME, AgentBuildError, build_agent, shipped_checks
from sandboxd.engine.agent._channel import (
    AgentChannel,
    AgentLostError,
    AgentProcess,
    CapturedOutput,
    OutputListener,
)
from sandboxd.engine.agent._protocol import AgentProtocolError

__all__ = [
    "AGENT_NAME",
    "AgentBuildError",
    "AgentChannel",
    "AgentLostError",
    "AgentProcess",
    "AgentProtocolError",
    "CapturedOutput",
    "OutputListener",
    "build_agent",
    "shipped_checks",
]
