"""shopmesh's product catalog: products, categories and prices; browse, search, batch get."""
