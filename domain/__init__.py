"""Pure mutual-action-plan domain: commands, events, state and the decider. No I/O here."""
