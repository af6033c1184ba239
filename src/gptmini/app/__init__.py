"""The Gradio web app on an export: the page and its handlers (`page`), what it renders
(`views`) and the attention maps (`inspection`)."""
