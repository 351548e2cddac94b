"""shopmesh's payments service: Charge, Refund, GetPayment, ListPayments against a built-in fake processor."""
