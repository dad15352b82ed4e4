"""What sits above the judges: GenerAlign collection, training, make reproduce's plan."""
