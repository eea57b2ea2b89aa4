"""Running a search or a retraining: the shared loops, device/seed/RNG handling, deterministic
kernels, the resumable search state, opt-in compilation, and what a run records of its origin."""
