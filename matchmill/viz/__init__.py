"""Pictures of what the pipeline does: ``matchmill viz pyramid`` and ``matchmill viz matches``."""
