"""The ``olss`` command, on top of every package: it imports ``app``, ``workers`` and
``schedules`` only inside the subcommand that needs them, so the gateway image (which has no
torch, no ``workers`` and no ``schedules``) runs ``olss gateway``."""
