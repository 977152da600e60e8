"""Developer tools, never part of a deployment: the demo, the RunPod emulator (RunPod's REST API served here)
and the background uvicorn server tests and benchmarks use. Images do not ship this package."""
