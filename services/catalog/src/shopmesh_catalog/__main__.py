# Before anything heavy is imported: a SIGTERM during the imports stops the start (early_signals), and
# modules no service image holds stay unimported (lean_imports).
from shopmesh_chassis import early_signals, lean_imports

early_signals.install()
lean_imports.install()

from shopmesh_catalog.wiring import main  # noqa: E402

main()
