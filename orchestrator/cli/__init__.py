"""``avatarctl``: the operator's command line (``main.app``), its commands' modules and what they print."""


def __getattr__(name: str) -> object:
    """``orchestrator.cli.app`` (an entry point installed before the CLI became a package) without importing
    every command's module when a module of the package is imported alone."""
    if name == "app":
        from orchestrator.cli.main import app

        return app
    raise AttributeError(name)
