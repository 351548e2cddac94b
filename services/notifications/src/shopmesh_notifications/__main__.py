# Before anything heavy is imported: a SIGTERM during the imports stops the start (early_signals).
from shopmesh_chassis import early_signals

early_signals.install()

from shopmesh_notifications.wiring import main  # noqa: E402

main()
