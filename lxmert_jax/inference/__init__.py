"""Using trained models: loading any saved LXMERT and answering questions with it."""
