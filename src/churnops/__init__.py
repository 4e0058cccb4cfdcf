"""churnops: the life cycle of a customer-churn model on MLflow."""
