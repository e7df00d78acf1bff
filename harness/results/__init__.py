"""What a run leaves: the run store (parquet rows, texts, resume, the baseline cache), metrics and summaries, tables,
figures, image-quality reports and the wandb log.
"""
