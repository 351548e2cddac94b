from shopmesh_users.wiring import main

main()
