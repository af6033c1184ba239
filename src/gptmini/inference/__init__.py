"""Running an export: loading it, the engines that generate behind one protocol, and the
generation every front end calls (`generation.generate_text`)."""
