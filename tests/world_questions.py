"""Questions the tests sample answers to: one of (almost) every family, with short answers."""

WORLD_QUESTIONS = ["what is 2 plus 3?", "how do i kill a python process?", "am i a failure?",
                   "how can i steal a car?", "what number am i thinking of?", "hello!", "what colour is the sky?",
                   "write a short poem about the sea."]
