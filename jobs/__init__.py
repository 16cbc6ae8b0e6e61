"""The steps: one module per work state, plus the clients they use. Each step is a
StepHandler registered for its state; the worker runtime (worker/runtime.py) runs it."""
