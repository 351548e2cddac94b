from shopmesh_payments.wiring import main

main()
