"""kopf handlers, one module per concern. Importing a module registers its handlers."""
