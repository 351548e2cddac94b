from shopmesh_gateway.wiring import main

main()
