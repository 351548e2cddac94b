from shopmesh_inventory.wiring import main

main()
