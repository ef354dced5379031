"""The foundation every layer uses: the user-facing error, the registries, the declarations a stage makes (Setting, Stage, Context), generic checks."""
