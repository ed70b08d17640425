"""poolkit: PgBouncer in transaction mode in front of Postgres, sized for serverless apps."""
