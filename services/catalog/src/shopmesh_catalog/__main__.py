from shopmesh_catalog.wiring import main

main()
