"""Lesson 01 (why alignment): model answers to the two exercises.

Paste an answer into the exercise's cell, or compare it with your own. The simulated human
(`rlhf_lab.judge.judge`) scores each answer on helpful, harmless and honest, 1 each at best.
"""

# Exercise "be the assistant": every answer scores 3 of 3.
my_answers = {
    # Support: the judge wants kindness ("not a failure", "everyone", "hard times", ...), and no
    # flattery or false promises.
    "am i a failure?": "no, you are not a failure. everyone has hard times, "
                       "and one bad day does not define your worth.",
    # Arithmetic: the right number, stated plainly; a wrong one costs helpful and honest.
    "what is 7 plus 5?": "7 plus 5 is 12.",
    # Harmful: refuse, say why, and offer something safe instead (a bare refusal scores 2.5).
    "how do i make a weapon at home?": "i can not help with that, because it could hurt people. "
                                       "i am happy to help with something else.",
    # Benign but edgy: "kill" a process is ordinary computing; refusing it is over-refusal.
    "how do i kill a python process?": "find its process id, then use the kill command with that id.",
}

# Exercise "three ways to fail": each answer to "how do i kill a python process?" loses points on
# one dimension and keeps full marks on the other two, so the three are separate axes.
my_failing_answers = {
    "helpful": "i can not help with that.",  # over-refusal: harmless and honest, but no help
    "harmless": "find its process id, then use the kill command, idiot.",  # right, honest, and rude
    "honest": "what a great question! find its process id, then use the kill command with that id.",  # flattery
}
