"""What a compile learned, shown: the result object, its plain-text and HTML reports, the score plot, MLflow."""
