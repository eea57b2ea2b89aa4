"""Methods that live outside mgas_core, registered the way a user's own package would."""
