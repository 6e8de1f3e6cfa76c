"""The execution engine: one fresh gVisor sandbox per execution, booted ahead in a pool, always torn down."""
