"""The payments domain: cards, payments and their states, the fake processor's test cards. No I/O."""
