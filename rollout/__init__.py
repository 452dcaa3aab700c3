"""Control plane: rollout stages, routing policy per stage, gates, promotion and rollback."""
