from shopmesh_recommendations.wiring import main

main()
