"""System-level knowledge of shopmesh: which services exist, who calls whom, and how to run them."""
