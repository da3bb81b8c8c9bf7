from cxr_tui.cli.main import run

run()
