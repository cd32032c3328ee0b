"""The ops: each module holds one op's Triton kernel, launcher, torch path and registration."""
