"""The executor, the Reconciler protocol, the intent and the snapshot stages read."""
