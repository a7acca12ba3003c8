"""Read models built from the events: plan state (inline), audit trail, health, analytics."""
