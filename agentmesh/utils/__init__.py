"""Small helpers AgentScope code imports from ``agentscope.utils``."""
