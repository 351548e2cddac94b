from shopmesh_orders.wiring import main

main()
