"""Pure domain logic with no I/O: the relay view and its one allowed-ports rule, scheduling
and allocation, admission rules, conditions and traffic accounting."""
