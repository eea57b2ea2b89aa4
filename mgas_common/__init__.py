"""What the core, the orchestrator and the analysis share without torch: user-input errors, the
bounded YAML loader, checked user files and strict JSON."""
