"""The zchat chat console: pure view and command logic under a prompt_toolkit app."""
