"""Q&A service: a Ray Serve application answering questions with SmolLM2 and managing users."""
