"""A run: built from a config or a workdir (`build`), trained (`loop`), and its checkpoint moved to other
files and meshes (`checkpoint_io`)."""
