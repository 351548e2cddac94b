from shopmesh_notifications.wiring import main

main()
